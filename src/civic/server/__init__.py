"""The CIVIC server: asyncio TCP service that leases duties and validates results by quorum."""
