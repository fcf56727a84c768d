"""Decoding backends: what each takes, yields and declares (base), the one list of them (registry), and the loops."""
