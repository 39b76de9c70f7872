"""ament_python package definition for stereonet_ros (also pip-installable)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'stereonet_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    package_data={PACKAGE: ['checkpoints/*.safetensors', 'checkpoints/*.onnx', 'checkpoints/*.json', 'samples/*.png']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        # Node parameters, the Fast DDS profile, and the rviz2 and Foxglove layouts.
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.xml') + glob('config/*.rviz')
         + glob('config/*.json')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='stereonet_ros maintainers',
    maintainer_email='maintainers@stereonet-ros.invalid',
    description='StereoNet dense stereo depth for ROS 2, a drop-in for stereo_image_proc.',
    license='MIT',
    python_requires='>=3.10',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'stereonet-infer = stereonet_ros.cli.infer:main',
            'stereonet-convert = stereonet_ros.cli.convert:main',
            'stereonet-export = stereonet_ros.cli.export:main',
            'stereonet-train = stereonet_ros.training.train:main',
            'stereonet-eval-bag = stereonet_ros.cli.eval_bag:main',
            'stereonet-make-bag = stereonet_ros.cli.make_bag:main',
            'stereonet_node = stereonet_ros.ros.node:main',
            'stereonet-evaluate = stereonet_ros.evaluation.evaluate:main',
        ],
    },
)
