"""OCI registries: references, mirrors, credentials, tokens and the registry client."""
