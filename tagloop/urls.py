from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.messages.views import SuccessMessageMixin
from django.templatetags.static import static
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from .security import AdminLoginForm, LoginForm

admin.site.login_form = AdminLoginForm  # the same lockout as /login/ and the API token


class PasswordChange(SuccessMessageMixin, auth_views.PasswordChangeView):
    template_name = "password_change.html"
    success_url = reverse_lazy("home")
    success_message = "Your password was changed."


urlpatterns = [
    # Pages outside base.html (Django admin, API docs) make browsers ask for /favicon.ico.
    path("favicon.ico", RedirectView.as_view(url=static("labeling/favicon.svg"), permanent=True), name="favicon"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="login.html", authentication_form=LoginForm),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # New members get a one-time password from their admin; this is where they replace it.
    path("account/password/", PasswordChange.as_view(), name="password_change"),
    path("api/v1/", include("labeling.api.urls")),
    path("", include("labeling.urls")),
]
