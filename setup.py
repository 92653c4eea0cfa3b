"""Only what pyproject.toml cannot say; everything else is there.

The packages are found automatically (a new subpackage of pfms_client or pfms_server
is in the wheel without a list to edit), and conf/ ships as the package pfms_conf,
so a non-editable install (a Docker image, a site-packages deploy) finds its Hydra
config too. setuptools' ``[tool.setuptools.packages.find]`` cannot do both: it
names a package after its folder, and conf/ must install as pfms_conf.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["pfms_client", "pfms_client.*", "pfms_server", "pfms_server.*"]), "pfms_conf"],
    package_dir={"pfms_conf": "conf"},
)
