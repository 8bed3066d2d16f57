"""The filesystem layer: the pyfuse3 adapter over the store. pyfuse3 and trio are imported here only."""
