"""Pieces of bench/table1.py's fair trial (issue 29): the environment record, the paired bootstrap and the
DreamBooth frontier, and the positive control's swap of picks for real renders."""
