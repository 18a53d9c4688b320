"""A worked Tenantry plug-in: how far to trust a GPS fix, as an API route and a batch job."""
