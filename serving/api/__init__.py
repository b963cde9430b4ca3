"""The HTTP layer: one APIRouter per OpenAI endpoint, assembled by `serving.api.app.build_app`."""
