"""What training and deployment agree on: the bundle's schema and digest, the budget, signing keys, safe file writes."""
