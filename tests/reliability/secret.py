"""The webhook secret of the suite's worker: random per session (one module, so that the conftest
and the tests share it), so that a leak anywhere is found by grep.
"""

import secrets

SECRET = "relsecret-" + secrets.token_hex(16)
