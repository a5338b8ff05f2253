"""scripts/sft.sh's one Python call: environment -> checked settings -> hardware plan -> the
launch command, printed and exec'd (``python -m smolsft.launch``; smolsft/launch/cli.py)."""
