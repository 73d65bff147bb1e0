"""DigitalOcean GPU Droplets for maider."""
