"""What pyproject.toml cannot say: ``resources/`` stays at the top of the repository but ships
inside the wheel as the package ``napari_ldae.resources`` (read with importlib.resources)."""

from setuptools import find_packages, setup

# resources/ and its data folders (setuptools wants each folder it ships listed as a package)
RESOURCES = {"napari_ldae.resources": ("resources", ["*.md"]),
             "napari_ldae.resources.configs": ("resources/configs", ["*.yaml"]),
             "napari_ldae.resources.demo": ("resources/demo", ["*"]),
             "napari_ldae.resources.regions": ("resources/regions", ["*"])}

setup(
    packages=[*find_packages(include=["napari_ldae", "napari_ldae.*"]), *RESOURCES],
    package_dir={name: folder for name, (folder, _) in RESOURCES.items()},
    package_data={"napari_ldae": ["napari.yaml"],
                  **{name: patterns for name, (_, patterns) in RESOURCES.items()}},
)
