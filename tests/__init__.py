"""maider test suite (a package so helpers such as tests.cloudsim import the same way everywhere)."""
