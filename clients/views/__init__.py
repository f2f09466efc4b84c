"""Browser pages of sites and datasets (routes in fedhealth/web_urls.py)."""

from .auth import home
from .dashboard import dashboard
from .site import dataset_detail, dataset_download, site_home
from .upload import dataset_upload

__all__ = ["dashboard", "dataset_detail", "dataset_download", "dataset_upload", "home", "site_home"]
