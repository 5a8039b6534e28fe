"""Configuration: YAML files in, validated typed values out (`schema` for the daemon's config,
`yamlfile` for the loader every YAML file of ours goes through)."""
