"""svcdns: stable virtual IPs and DNS names for short-lived workloads on Linux hosts."""

__version__ = "0.1.0"
