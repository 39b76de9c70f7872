"""stereonet_ros: dense stereo depth with StereoNet for ROS 2.

Everything outside ``stereonet_ros.ros`` runs without ROS: the model, checkpoints, inference,
geometry, image codecs, synchronization, training and evaluation.
"""

__version__ = '0.1.0'
