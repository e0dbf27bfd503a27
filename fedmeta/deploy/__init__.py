"""Multi-site deployment: credentials (``certs``), the ``flwr`` CLI against a SuperLink
(``control``, ``register``), PID-exact process management (``processes``) and the loopback
deployment (``local``) that ``fedmeta deploy-local`` runs."""
