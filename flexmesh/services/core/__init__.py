"""The gateway's core, free of any transport: admission, routing, the route machine's loop,
Admin operations and the input checks both transports share. gRPC (`services/servicers.py`)
and HTTP (`services/http.py`) are thin adapters over it."""
