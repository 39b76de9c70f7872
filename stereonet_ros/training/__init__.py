"""stereonet_ros.training."""
