"""Extension objects, created once and bound to an app in ``create_app``."""

from flask_sock import Sock
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
sock = Sock()
