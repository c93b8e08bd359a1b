"""Files on disk: atomic writes (``atomic``), the content hash and metadata shared by the
safetensors-based pack and bank files (``tensor_file``), where the shipped ``config/`` lives
(``config_files``) and reading image files (``images``). Imports nothing else from core."""
