"""cmtyflow: community campaigns as YAML playbooks."""

__version__ = "0.1.0"
