"""vmsim: emulated VMs behind the cloud simulators' instances (the other side of maider's SSH).

``VMFarm(sim)`` gives every running instance of a simulator an emulated VM at its loopback
IPv4 and SSH port: an asyncssh server with the user-data's host key and authorized keys, a
cloud-init that applies the ``#cloud-config`` (schema-checked) into a per-VM root directory,
a command interpreter with stand-ins for the commands maider runs (docs/LIFECYCLE.md), and
stand-in vLLM / Open WebUI servers started by ``docker compose up``. See README.md here.
"""

from __future__ import annotations

from .cloudinit import CloudInit, WrittenFile
from .docker import Container, Docker
from .farm import VMFarm
from .options import GPUModel, StandInOptions, VLLMFailure, gpus_for_type
from .shell import CommandRecord, Shell
from .systemd import Systemd
from .vllm import VLLMConfig, VLLMStandIn, WebUIStandIn
from .vm import EmulatedVM, ExecRecord, ForwardRecord

__all__ = [
    "CloudInit",
    "CommandRecord",
    "Container",
    "Docker",
    "EmulatedVM",
    "ExecRecord",
    "ForwardRecord",
    "GPUModel",
    "Shell",
    "StandInOptions",
    "Systemd",
    "VLLMConfig",
    "VLLMFailure",
    "VLLMStandIn",
    "VMFarm",
    "WebUIStandIn",
    "WrittenFile",
    "gpus_for_type",
]
