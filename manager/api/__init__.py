"""HTTP adapters: the login pages and session gate, the gateway and its wire formats."""
