"""The client layer: the ``/.requests`` wire format and ``link``, over plain file I/O.

It needs neither LMDB nor pyfuse3 nor trio: a program that only proves it
holds some content imports this package and nothing heavier.
"""
