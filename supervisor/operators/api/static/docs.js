// The admin API's /docs page: Swagger UI over /openapi.json, which needs the bearer token.
// The token is asked once per browser tab (sessionStorage: gone when the tab closes, never in
// a URL) and sent with every request the page makes, the schema's included.
(function () {
  let token = sessionStorage.getItem("jsToken");
  if (token === null) {
    token = window.prompt("Admin API token (blank if the API has none)") || "";
    sessionStorage.setItem("jsToken", token);
  }
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#ui",
    requestInterceptor: (req) => {
      if (token) req.headers["Authorization"] = "Bearer " + token;
      return req;
    },
    responseInterceptor: (res) => {
      if (res.status === 401) sessionStorage.removeItem("jsToken");  // ask again on reload
      return res;
    },
  });
})();
