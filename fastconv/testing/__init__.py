"""Tools to test code that uses fastconv, and fastconv backends themselves.

* :func:`gradcheck`: analytic gradients of a network, layer or function against central differences;
* :mod:`fastconv.testing.reference`: float64 direct-loop references of every kernel (no fastconv code).
"""

from __future__ import annotations

from fastconv.testing._gradcheck import GradcheckError, GradcheckResult, gradcheck, numerical_gradient

__all__ = ["GradcheckError", "GradcheckResult", "gradcheck", "numerical_gradient"]
