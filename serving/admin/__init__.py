"""The admin API (/admin/models): register, update, deploy, undeploy and delete models at runtime."""
