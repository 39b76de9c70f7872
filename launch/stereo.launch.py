"""Start stereonet_node: ``ros2 launch stereonet_ros stereo.launch.py [name:=value ...]``.

Arguments (``ros2 launch stereonet_ros stereo.launch.py --show-args``):

- ``namespace``: namespace of the node (its topics are relative: ``<namespace>/disparity`` ...).
- ``left_namespace`` / ``right_namespace`` (``left`` / ``right``): where the cameras publish; the
  node's ``left/image_rect`` is remapped to ``<left_namespace>/image_rect`` and so on (and the optional
  ``left/image_rect_color``, the cloud's colours, to ``<left_namespace>/image_rect_color``).
- ``params_file``: parameters (default: the installed ``config/stereonet.yaml``). For QoS overrides
  (e.g. reliable subscriptions for large images between processes) copy it and uncomment its
  ``qos_overrides`` section.
- ``checkpoint``, ``backend``, ``device``, ``precision``, ``inference_scale``, ``refine``, ``local_search_px``,
  ``approximate_sync``, ``queue_size``, ``use_color``, ``avoid_point_cloud_padding``, ``min_disparity``,
  ``image_transport``, ``use_sim_time``
  (stereo_image_proc's launch arguments where they share a name): when given, they override the params
  file; left empty (the default) the params file's value holds. The node checks the values
  (``inference_scale`` in [0.1, 2.5], ``image_transport`` raw or compressed) and refuses to start with a
  bad one. ``image_transport:=compressed`` reads sensor_msgs/CompressedImage (PNG, JPEG) on
  ``<left_namespace>/image_rect/compressed`` and so on; the camera_info topics do not change.
- ``reliable_inputs``: ``true`` subscribes the four inputs reliable instead of best effort (large images
  between processes; see the README's QoS section, which also gives the Fast DDS profile that keeps best
  effort); it covers the image topics of both transports.
- ``log_level``: ``debug``, ``info`` (default), ``warn``, ``error``.

Example: a bag of a camera publishing ``/stereo/left/image_rect`` ...::

    ros2 launch stereonet_ros stereo.launch.py namespace:=stereo use_sim_time:=true
    ros2 bag play --clock my_bag
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'stereonet_ros'
EXECUTABLE = 'stereonet_node'
OVERRIDABLE = ('checkpoint', 'backend', 'device', 'precision', 'inference_scale', 'refine', 'local_search_px',
               'approximate_sync', 'queue_size', 'use_color', 'avoid_point_cloud_padding', 'min_disparity',
               'image_transport',
               'use_sim_time')
BOOLEAN = ('refine', 'approximate_sync', 'use_color', 'avoid_point_cloud_padding', 'use_sim_time')
DOUBLE = ('inference_scale', 'min_disparity')
INTEGER = ('queue_size', 'local_search_px')
CHOICES = {'image_transport': ('raw', 'compressed'), 'backend': ('auto', 'pytorch', 'onnxruntime')}


def parameter_overrides(values):
    """Launch argument values (strings) -> parameter overrides: only the arguments that were set.

    An empty argument leaves the params file's value in force; booleans become ``bool``, doubles ``float``
    (a string would not match the node's double parameter).
    """
    overrides = {}
    for name in OVERRIDABLE:
        text = values.get(name, '').strip()
        if not text:
            continue
        if name in BOOLEAN:
            if text.lower() not in ('true', 'false'):
                raise ValueError(f'launch argument {name}:={text!r}: must be true or false')
            overrides[name] = text.lower() == 'true'
        elif name in DOUBLE:
            try:
                overrides[name] = float(text)
            except ValueError:
                raise ValueError(f'launch argument {name}:={text!r}: must be a number') from None
        elif name in INTEGER:
            try:
                overrides[name] = int(text)
            except ValueError:
                raise ValueError(f'launch argument {name}:={text!r}: must be an integer') from None
        elif name in CHOICES:
            if text not in CHOICES[name]:
                raise ValueError(f'launch argument {name}:={text!r}: must be one of {", ".join(CHOICES[name])}')
            overrides[name] = text
        else:
            overrides[name] = text
    return overrides


def reliable_input_overrides(text, namespace, left, right):
    """``reliable_inputs`` -> the ``qos_overrides`` parameter that makes the four input subscriptions reliable.

    Keys are the fully qualified topics the node subscribes (its namespace, the camera namespaces), the image
    topics of both transports (``image_rect`` and ``image_rect/compressed``: the transport may come from the
    params file; an override of a topic the node does not subscribe is never read); '' or 'false' gives none.
    """
    text = text.strip().lower()
    if text not in ('', 'true', 'false'):
        raise ValueError(f'launch argument reliable_inputs:={text!r}: must be true or false')
    if text != 'true':
        return {}
    base = '/' + namespace.strip('/') if namespace.strip('/') else ''

    def qualified(camera):
        return camera.rstrip('/') if camera.startswith('/') else f'{base}/{camera.rstrip("/")}'

    topics = [f'{qualified(left)}/image_rect', f'{qualified(right)}/image_rect',
              f'{qualified(left)}/image_rect/compressed', f'{qualified(right)}/image_rect/compressed',
              f'{qualified(left)}/camera_info', f'{qualified(right)}/camera_info']
    return {'qos_overrides': {topic: {'subscription': {'reliability': 'reliable', 'depth': 10}} for topic in topics}}


def _node(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDABLE}
    reliable = reliable_input_overrides(LaunchConfiguration('reliable_inputs').perform(context),
                                        LaunchConfiguration('namespace').perform(context),
                                        LaunchConfiguration('left_namespace').perform(context),
                                        LaunchConfiguration('right_namespace').perform(context))
    left = LaunchConfiguration('left_namespace')
    right = LaunchConfiguration('right_namespace')
    return [Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name='stereonet_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), parameter_overrides(values), reliable],
        remappings=[
            ('left/image_rect', [left, '/image_rect']),
            ('left/image_rect_color', [left, '/image_rect_color']),
            ('left/camera_info', [left, '/camera_info']),
            ('right/image_rect', [right, '/image_rect']),
            ('right/camera_info', [right, '/camera_info']),
        ],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the node and its topics'),
        DeclareLaunchArgument('left_namespace', default_value='left',
                              description='Namespace of the left camera (image_rect, camera_info)'),
        DeclareLaunchArgument('right_namespace', default_value='right',
                              description='Namespace of the right camera (image_rect, camera_info)'),
        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), 'config',
                                                                  'stereonet.yaml']),
                              description='Node parameters (YAML)'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="Checkpoint path; '' = the params file's (bundled default)"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto (the bundled default on a CPU in fp32 runs in ONNX Runtime), "
                              "pytorch or onnxruntime; '' = the params file's (auto)"),
        DeclareLaunchArgument('device', default_value='',
                              description="auto, cpu, cuda or cuda:N; '' = the params file's (auto)"),
        DeclareLaunchArgument('precision', default_value='',
                              description="auto (the bundled default in bf16 on a CPU with native bfloat16, else "
                              "fp32), fp32, bf16 (GPU, or CPU with native bfloat16) or fp16 (GPU); '' = the params "
                              "file's (auto)"),
        DeclareLaunchArgument('inference_scale', default_value='',
                              description="Network on the pair resized by this, 0.1..2.5 (above 1: finer, "
                              "slower); '' = the params file's (1.0)"),
        DeclareLaunchArgument('refine', default_value='',
                              description="true or false: false skips the refiner (the soft argmin carried up "
                              "guided by the image, about a third of the time; with inference_scale 2, better on "
                              "real pairs than the whole network at 1); '' = the params file's (true)"),
        DeclareLaunchArgument('local_search_px', default_value='',
                              description="Search the photometric cost within this many pixels of the network's "
                              "answer, 0..16 (0 = off; -1 = 4 where the network runs on the CPU, 0 on a GPU); "
                              "'' = the params file's (-1)"),
        DeclareLaunchArgument('approximate_sync', default_value='',
                              description="true or false; '' = the params file's (false)"),
        DeclareLaunchArgument('queue_size', default_value='',
                              description="Messages held per input topic; '' = the params file's (5)"),
        DeclareLaunchArgument('use_color', default_value='',
                              description="true or false: rgb field in points2; '' = the params file's (true)"),
        DeclareLaunchArgument('avoid_point_cloud_padding', default_value='',
                              description="true or false: packed points2; '' = the params file's (false)"),
        DeclareLaunchArgument('min_disparity', default_value='',
                              description="Smallest valid disparity, px (-2048..2048); '' = the params file's (0)"),
        DeclareLaunchArgument('image_transport', default_value='',
                              description="raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, PNG "
                              "or JPEG, on <image topic>/compressed), as image_transport names them; '' = the "
                              "params file's (raw)"),
        DeclareLaunchArgument('reliable_inputs', default_value='',
                              description="true: reliable input subscriptions (large images between processes); "
                              "'' or false: sensor-data (best effort), as stereo_image_proc"),
        DeclareLaunchArgument('use_sim_time', default_value='',
                              description="true for bag replay with --clock; '' = the params file's (false)"),
        DeclareLaunchArgument('log_level', default_value='info', description='debug, info, warn or error'),
        OpaqueFunction(function=_node),
    ])
