"""The `flexmesh` command (`main.py`), on top of every other package: it imports services,
bench, loadgen and the actors' utilities, and nothing imports it.
"""
