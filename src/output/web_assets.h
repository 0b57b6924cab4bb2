/*
 * web_assets.h - the front end (web/index.html, app.css, app.js) compiled
 * into the library: cmake/embed_web.cmake writes the arrays into the build
 * directory (generated/web_assets.c) from the files in web/ at build time.
 * Used by the HTML report writer (html.c) and `resid serve`.
 */
#ifndef RESID_OUTPUT_WEB_ASSETS_H
#define RESID_OUTPUT_WEB_ASSETS_H

#include <stddef.h>

typedef struct rs_web_asset {
    const char *name; /* file name in web/, e.g. "app.js" */
    const char *mime; /* Content-Type */
    const unsigned char *data; /* len bytes, followed by a 0 byte */
    size_t len;
} rs_web_asset;

extern const rs_web_asset rs_web_assets[];
extern const int rs_web_n_assets;

/* The asset called `name`, or NULL. */
const rs_web_asset *rs_web_asset_find(const char *name);

#endif
