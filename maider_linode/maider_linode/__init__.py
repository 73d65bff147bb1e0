"""Linode (Akamai Cloud) GPU VMs for maider."""
