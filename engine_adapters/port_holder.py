"""Holds N TCP ports on 127.0.0.1 for a sandbox: `python -m thundersim.engine_adapters.port_holder N`.

Binds and listens on N ephemeral ports, prints `{"ports": [...]}` on one line, then waits until
its stdin closes: the sandbox closes it on teardown, and the OS closes it when the parent dies,
so the ports never outlive the run that asked for them. SIGTERM ends it too.
"""

from __future__ import annotations

import json
import socket
import sys


def main() -> None:
    n = int(sys.argv[1])
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    print(json.dumps({"ports": [s.getsockname()[1] for s in socks]}), flush=True)
    sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
