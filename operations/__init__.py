"""Operations: the layer above the services. One child-server launcher, one ``Stack`` (the main job,
benchmarks and test fixtures), and the ``vitrine`` command. Services never import this package."""
