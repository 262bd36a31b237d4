"""setuptools hook: compile the cubins (build_cubins.py) before the package files are copied."""
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCubins(build_py):
    def run(self):
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "build_cubins.py")], check=True)
        self.__dict__.pop("data_files", None)   # package data is listed again, now with the cubins
        super().run()


setup(cmdclass={"build_py": BuildPyWithCubins})
