"""``dit-bench``: speed, accuracy and parity for every backend x precision on this machine."""
