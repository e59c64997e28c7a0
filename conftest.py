"""pytest set-up shared by tests/ and the solution notebooks run under nbval.

Everything runs in the `ci` profile (tiny sizes) unless SSLKIT_PROFILE says otherwise; kernels
started by nbval inherit this environment.
"""

import os

os.environ.setdefault("SSLKIT_PROFILE", "ci")
os.environ.setdefault("MPLBACKEND", "Agg")
