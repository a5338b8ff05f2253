"""Which node this launch is and where the rendezvous is: torchrun's names (NNODES,
NODE_RANK, MASTER_ADDR, MASTER_PORT), filled from SLURM's variables where the environment
has them (SLURM_NNODES, SLURM_NODEID, the first host of SLURM_JOB_NODELIST by
``scontrol show hostnames``). Standard library only."""
from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Optional

DEFAULT_PORT = 29500  # torchrun's default; every node must use the same
SCONTROL_TIMEOUT_S = 30


class NodesError(ValueError):
    """A node setting that is missing or contradicts another; the message names it."""


@dataclass
class Nodes:
    """``nnodes`` nodes, this one ``node_rank``; rendezvous at ``master_addr:master_port``;
    ``rdzv_id``: the job's id (SLURM_JOB_ID, else ``sft``); ``source``: where they came from."""
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    rdzv_id: str
    source: str


def head_node(nodelist: str, env: dict) -> str:
    """The first host of a SLURM node list (``node[01-04]``), by ``scontrol show hostnames``.
    Raises NodesError when scontrol is missing or fails."""
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        raise NodesError(f"SLURM_JOB_NODELIST={nodelist!r} but scontrol is not on PATH: set MASTER_ADDR")
    try:
        r = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                           timeout=SCONTROL_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise NodesError(f"scontrol show hostnames {nodelist} did not answer in {SCONTROL_TIMEOUT_S}s: "
                         f"set MASTER_ADDR") from None
    hosts = r.stdout.split()
    if r.returncode != 0 or not hosts:
        raise NodesError(f"scontrol show hostnames {nodelist} failed (exit {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[:200]}): set MASTER_ADDR")
    return hosts[0]


def free_port() -> int:
    """A TCP port free on this machine now (one node: nobody else needs to know it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _int(env: dict, name: str, fallback: Optional[str], default: int) -> int:
    text = env.get(name) or (env.get(fallback) if fallback else None)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise NodesError(f"{name if env.get(name) else fallback} {text!r}: expected an integer") from None


def nodes_from_env(env: dict) -> Nodes:
    """The node settings: NNODES [SLURM_NNODES, else 1], NODE_RANK [SLURM_NODEID, else 0],
    MASTER_ADDR [head of SLURM_JOB_NODELIST; one node: 127.0.0.1], MASTER_PORT [one node: a free
    port; several: 29500]. The torchrun names win over SLURM's. Raises NodesError for a
    NODE_RANK outside [0, NNODES) or several nodes without a MASTER_ADDR."""
    slurm = any(k in env for k in ("SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST"))
    nnodes = _int(env, "NNODES", "SLURM_NNODES" if slurm else None, 1)
    node_rank = _int(env, "NODE_RANK", "SLURM_NODEID" if slurm else None, 0)
    if nnodes < 1:
        raise NodesError(f"NNODES {nnodes}: expected an integer >= 1")
    if not 0 <= node_rank < nnodes:
        raise NodesError(f"NODE_RANK {node_rank}: expected 0 to NNODES - 1 = {nnodes - 1}")
    addr = env.get("MASTER_ADDR") or ""
    if not addr and nnodes > 1:
        if not (slurm and env.get("SLURM_JOB_NODELIST")):
            raise NodesError(f"NNODES={nnodes} needs MASTER_ADDR (the address of node 0, where the rendezvous is)")
        addr = head_node(env["SLURM_JOB_NODELIST"], env)
    port = _int(env, "MASTER_PORT", None, DEFAULT_PORT if nnodes > 1 else 0) or free_port()
    if not 1 <= port <= 65535:
        raise NodesError(f"MASTER_PORT {port}: expected a TCP port (1-65535)")
    return Nodes(nnodes, node_rank, addr or "127.0.0.1", port, env.get("SLURM_JOB_ID") or "sft",
                 "SLURM" if slurm else "environment")
