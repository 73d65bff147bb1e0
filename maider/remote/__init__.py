"""What maider puts on, and runs on, the rented VM.

- ``compose``: the docker compose file (vLLM, optionally Open WebUI), published on 127.0.0.1 only.
- ``cloudinit``: the ``#cloud-config`` user-data that prepares the VM. It never carries a secret.
- ``commands``: the exact command strings maider runs over SSH (docs/LIFECYCLE.md), the paths on
  the VM, the secrets file, and pure parsers for the commands' output.

The renderers and parsers are pure (no I/O, no network) so they can be tested exhaustively and
shared with the VM emulator in ``tests/vmsim``.
"""
