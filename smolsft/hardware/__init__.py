"""The machine and its decisions: facts (sources in docs/gpu.md), the probe (nvidia-smi,
torch, the CPU), one rule per decision (rules.py), the memory model, the install plan
setup.sh follows; standard library only where setup.sh runs it before anything is installed
(`python -m smolsft.hardware`)."""
