"""Docker deployment: engine access, image builds, citizen containers, ``civic server install``.

Nothing here is imported by ``civic.server`` or ``civic.citizen``: a server or an agent never
needs Docker to run. This package deploys them, so it may import what they are given to start.
"""
