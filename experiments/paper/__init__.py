"""The paper's experiments: XNAS's functional units (section 3), played on synthetic
rewards by :mod:`experiments.paper.pea`, and the wipeout and AutoAugment seen in real
runs.  Each is ``python -m experiments.paper.<name>``; see :mod:`experiments` for the
command line they share, and docs/experiments.md for their results."""
