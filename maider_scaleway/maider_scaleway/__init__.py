"""Scaleway GPU Instances for maider."""
