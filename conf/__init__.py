"""pfms's Hydra config. In a checkout this is just conf/; a wheel installs it as the
package ``pfms_conf`` so that a non-editable install finds its YAML files too."""
