"""Files on disk: atomic writes (``atomic``), the content hash and metadata shared by the
safetensors-based pack and bank files (``tensor_file``), where the shipped ``config/`` lives
(``config_files``), reading image files (``images``), the photos bundled with scikit-image
(``sample_photos``) and the user's cache of things built once (``cache``). Imports nothing else
from core."""
