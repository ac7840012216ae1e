"""The dashboard and Prometheus /metrics, served by the server process."""
