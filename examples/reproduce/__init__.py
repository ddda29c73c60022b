"""Re-run the analyses of "There and Back Again" (Rebuffi et al., CVPR 2020): ``python -m examples.reproduce``.

Modules:

- :mod:`~examples.reproduce.cli`: the command line (options and their checks, the resolved context, :func:`main`)
- :mod:`~examples.reproduce.models`: the cached default training run; models from weights and checkpoints
- :mod:`~examples.reproduce.data`: the analysed images (a VOC split or an ImageFolder) as a ProbeBatch
- :mod:`~examples.reproduce.analyses`: the analyses as pure functions returning result dataclasses
- :mod:`~examples.reproduce.gap_vs_loss`: gap-vs-loss, the meta-correlation gap against the loss gap
- :mod:`~examples.reproduce.pointing`: the pointing-game helpers and standard errors the analyses share
- :mod:`~examples.reproduce.verdicts`: the paper's claims checked against an analysis' numbers
- :mod:`~examples.reproduce.report`: each analysis' Markdown report and the summary README
- :mod:`~examples.reproduce.figures`: each analysis' matplotlib figure
"""

from .cli import main

__all__ = ["main"]
