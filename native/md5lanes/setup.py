from setuptools import Extension, setup

setup(ext_modules=[Extension("kvstore_md5lanes", ["md5lanes.c"], extra_compile_args=["-O3"])])
