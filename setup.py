"""Map the `tuneforge` namespace onto the component folders (service/, operator/, trainer_image/)."""

from setuptools import find_namespace_packages, setup

ROOTS = ("service", "operator", "trainer_image")
package_dir = {}
packages = []
for root in ROOTS:
    for pkg in find_namespace_packages(where=root, include=["tuneforge.*"]):
        packages.append(pkg)
        package_dir[pkg] = f"{root}/{pkg.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir, package_data={"tuneforge.service": ["ui/*", "py.typed"]})
