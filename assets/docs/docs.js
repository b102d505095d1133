// Starts Swagger UI on /docs. It lives in a served file rather than an inline
// <script> so that the page's Content-Security-Policy needs no 'unsafe-inline'.
// URLs are relative to the page (/docs), so "openapi.json" is /openapi.json.
"use strict";
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default would send the document to validator.swagger.io: nothing
  // leaves this page.
  validatorUrl: null,
  displayRequestDuration: true,
});
