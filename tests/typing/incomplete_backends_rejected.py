"""Checked by mypy in tests/test_backend_protocol.py (never run): incomplete backend modules are rejected.

The test expects an error on each assignment (a checker that accepts these proves nothing).
"""

import backend_missing_a_kernel
import backend_with_a_wrong_signature

from fastconv.backends import Backend

missing_a_kernel: Backend = backend_missing_a_kernel
wrong_signature: Backend = backend_with_a_wrong_signature
